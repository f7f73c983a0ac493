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
