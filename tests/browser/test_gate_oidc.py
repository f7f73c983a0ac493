"""The ``oidc`` gate in the real page, end to end, through a real provider.

A real ``omiro serve`` with ``[gate] kind = "oidc"`` at the test provider
(``oidc-provider`` on Node, 127.0.0.1, ``tests/oidc_support.py``), and real
Chromium people: the page asks them to sign in (no session, no camera
before), the button takes them to the provider's login page, they sign in as
a test account and come back with the gate pass; then two adults are matched
and calling and chatting, while a minor waits apart, and a child under the
minimum age is refused with a page saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from oidc_support import CLIENT_ID, CLIENT_SECRET, Provider, running_provider

pytestmark = pytest.mark.browser

DIALOG = "document.querySelector('[data-testid=gate-dialog]')"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as running:
        yield running


def oidc_server(make_server: Any, provider: Provider) -> Any:
    return make_server(
        OMIRO_GATE_KIND="oidc",
        OMIRO_GATE_OIDC_ISSUER=provider.issuer,
        OMIRO_GATE_OIDC_CLIENT_ID=CLIENT_ID,
        OMIRO_GATE_OIDC_CLIENT_SECRET=CLIENT_SECRET,
        OMIRO_GATE_OIDC_SCOPES='["openid", "email", "profile"]',
        OMIRO_GATE_OIDC_EMAIL_DOMAINS="campus.example",
        OMIRO_GATE_AGE_CLAIM="birthdate",
        OMIRO_GATE_MIN_AGE="13",
    )


def sign_in(person: Any, server: Any, account: str, *, arrive: str = "/") -> None:
    """Start, be asked to sign in, sign in at the provider as ``account``, and wait
    until the browser is back on ``server`` at ``arrive`` (a path prefix)."""
    person.start()
    person.wait(f"() => {DIALOG}.open")
    assert person.testid("gate-title").text_content() == "Sign in to chat"
    assert person.js("() => document.activeElement?.dataset?.testid") == "gate-submit"
    assert person.state == "idle"  # refused: no session, no camera asked for
    assert person.probe()["gum"] == 0
    person.testid("gate-submit").press("Enter")  # keyboard only
    person.page.wait_for_url("**/interaction/**", timeout=15_000)
    person.page.get_by_role("button", name=f"Sign in as {account}").click()
    person.page.wait_for_url(
        lambda url: url.startswith(server.url + arrive) and (arrive != "/" or "/gate/" not in url),
        timeout=15_000,
    )


def back_on_the_page(person: Any, server: Any) -> None:
    assert person.page.url == server.url + "/"
    person.page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)


def test_oidc_sign_in_then_adults_matched_calling_and_chatting_minor_apart(
    make_server, people, provider
):
    server = oidc_server(make_server, provider)
    alice = people(server, "alice")
    bob = people(server, "bob")
    cy = people(server, "cy")
    for person, account in ((cy, "minor-1"), (alice, "adult-1"), (bob, "adult-2")):
        sign_in(person, server, account)
        back_on_the_page(person, server)
    cy.start()
    cy.wait_state("waiting")
    alice.start()
    alice.wait_state("waiting")  # the minor waits too, and is not taken
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    assert alice.partner_id == bob.session_id
    for person in (alice, bob):
        person.wait_call_connected()
    alice.wait_media_flowing()
    alice.testid("chat-input").fill("hello from a signed-in adult")
    alice.testid("chat-input").press("Enter")
    bob.wait(
        "() => [...document.querySelectorAll('[data-testid=chat-log] > li')]"
        ".some(li => li.textContent.includes('hello from a signed-in adult'))"
    )
    assert cy.state == "waiting"
    assert not alice.js(f"() => {DIALOG}.open")
    assert alice.js("() => document.cookie") == ""  # the pass is HttpOnly


def test_oidc_child_under_the_minimum_age_is_refused_with_a_page(make_server, people, provider):
    server = oidc_server(make_server, provider)
    ed = people(server, "ed")
    sign_in(ed, server, "child-1", arrive="/gate/oidc/callback")
    assert ed.page.get_by_role("heading", level=1).text_content() == "You cannot use this service"
    assert "not open to people of your age" in ed.page.text_content("main")
    ed.page.get_by_role("link", name="Back to the start page").click()
    ed.page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
    ed.start()
    ed.wait(f"() => {DIALOG}.open")  # still not let in
    assert ed.state == "idle"


ADMIN_TOKEN = "browser-test-admin-token-of-32-bytes!!"


def test_oidc_reported_account_is_banned_from_the_console_and_only_that_page_ends(
    make_server, people, provider, browser
):
    """Two signed-in adults on one address call; Alice reports Bob; an admin bans Bob's
    account from the console. Bob's page ends with the banned notice, Alice's (the same
    address) waits on, and Bob's page loaded again gets no session."""
    server = make_server(
        OMIRO_GATE_KIND="oidc",
        OMIRO_GATE_OIDC_ISSUER=provider.issuer,
        OMIRO_GATE_OIDC_CLIENT_ID=CLIENT_ID,
        OMIRO_GATE_OIDC_CLIENT_SECRET=CLIENT_SECRET,
        OMIRO_GATE_OIDC_SCOPES='["openid", "email", "profile"]',
        OMIRO_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    made = server.get_json(
        "/admin/moderators",
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        body={"name": "ada", "role": "admin"},
    )
    alice = people(server, "alice")
    bob = people(server, "bob")
    for person, account in ((alice, "adult-1"), (bob, "adult-2")):
        sign_in(person, server, account)
        back_on_the_page(person, server)
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    alice.testid("report").click()
    alice.page.locator("#report-dialog").get_by_label("Spam or advertising").check()
    alice.testid("report-confirm").click()
    bob.wait_state("waiting")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, reduced_motion="reduce")
    try:
        page = context.new_page()
        page.goto(server.url + "/console")
        page.wait_for_function("() => window.omiroConsole !== undefined", timeout=10_000)
        page.locator("#signin-name").fill("ada")
        page.locator("#signin-password").fill(made["password"])
        page.locator("#signin-password").press("Enter")
        page.get_by_test_id("queue-item").click()
        page.wait_for_function("() => !document.querySelector('#evidence').hidden")
        facts = page.locator("#evidence-facts").inner_text()
        assert "Reported account" in facts
        assert "account:" in facts
        page.get_by_test_id("ban-account").focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#evidence-state').textContent.includes('(account)')",
            timeout=15_000,
        )
        assert "account:" in page.get_by_test_id("bans-body").inner_text()
    finally:
        context.close()
    bob.wait_state("blocked")
    assert "banned" in bob.testid("notice").inner_text()
    assert alice.state == "waiting"
    # Bob's page loaded again, with the pass it still holds: no session for that account.
    bob.page.goto(server.url + "/")
    bob.page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
    bob.start()
    bob.wait_state("blocked")
    assert "banned" in bob.testid("notice").inner_text()
    assert alice.state == "waiting"


def test_oidc_refusal_page_is_in_the_browsers_language(make_server, people, provider):
    server = oidc_server(make_server, provider)
    ed = people(server, "ed", locale="de-DE")
    ed.start()
    ed.wait(f"() => {DIALOG}.open")
    assert ed.js("() => document.documentElement.lang") == "de"
    ed.testid("gate-submit").press("Enter")
    ed.page.wait_for_url("**/interaction/**", timeout=15_000)
    ed.page.get_by_role("button", name="Sign in as child-1").click()
    ed.page.wait_for_url(lambda url: "/gate/oidc/callback" in url, timeout=15_000)
    heading = ed.page.get_by_role("heading", level=1).text_content()
    assert heading == "Du kannst diesen Dienst nicht nutzen"
    assert ed.js("() => document.documentElement.lang") == "de"
    ed.page.get_by_role("link", name="Zurück zur Startseite").click()
    ed.page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
