"""The first-visit safety notice, and what a quiet server says on Next."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

WELCOME_OPEN = "() => document.getElementById('welcome').open"


def test_notice_shown_once_and_required_before_start(make_server, people):
    server = make_server()
    alice = people(server, "alice", notice_accepted=False)
    alice.wait(WELCOME_OPEN)
    text = alice.testid("welcome").inner_text()
    for words in ("18 or older", "Report", "bans", "camera"):
        assert words in text, words

    # Dismissed with Esc, not accepted: Start asks again and starts nothing.
    alice.page.keyboard.press("Escape")
    alice.wait(f"() => !({WELCOME_OPEN})()")
    alice.testid("start").click()
    alice.wait(WELCOME_OPEN)
    assert alice.state == "idle"
    assert alice.probe()["gum"] == 0
    # Accepting goes on with the Start that was pressed.
    alice.testid("notice-accept").click()
    alice.wait_state("waiting")
    assert alice.js("() => window.omiro.noticeAccepted")

    # Remembered: not shown again on the next visit.
    alice.page.reload()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    assert not alice.js(WELCOME_OPEN)
    assert alice.testid("welcome").is_hidden()

    # The operator changes the notice: everybody sees the new one once.
    port = server.port
    assert server.stop() == 0
    make_server(
        port=port,
        OMIRO_PAGE_NOTICE="New house rules.\n\nBe excellent to each other.",
        OMIRO_PAGE_TERMS_URL="https://example.org/terms",
    )
    alice.page.reload()
    alice.page.wait_for_function("() => window.omiro !== undefined")
    alice.wait(WELCOME_OPEN)
    text = alice.testid("welcome").inner_text()
    assert "Be excellent to each other." in text
    assert "Terms of use" in text
    href = alice.page.get_by_role("link", name="Terms of use").get_attribute("href")
    assert href == "https://example.org/terms"


def test_rules_can_be_read_again(server, people):
    alice = people(server, "alice")
    assert not alice.js(WELCOME_OPEN)
    alice.testid("open-notice").click()
    alice.wait(WELCOME_OPEN)
    alice.testid("notice-accept").click()
    alice.wait(f"() => !({WELCOME_OPEN})()")
    assert alice.js("() => document.activeElement.dataset.testid") == "open-notice"


def test_next_with_nobody_else_says_it_is_the_same_stranger(server, pair):
    alice, bob = pair(server)
    alice.testid("chat-input").fill("first words")
    alice.page.keyboard.press("Enter")
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    old = alice.js("() => window.omiro.matchId")

    alice.testid("next").click()
    for person in (alice, bob):
        person.wait(
            "old => window.omiro.state === 'connected' && window.omiro.matchId !== old", old
        )
    for person in (alice, bob):
        status = person.testid("status").inner_text()
        assert "same stranger" in status, status
        entries = [e["text"] for e in person.chat_entries()]
        assert any("back with the same stranger" in e for e in entries), entries
        assert not any("random stranger" in e for e in entries[-2:]), entries
    # The conversation so far is kept: it is the same person.
    assert "first words" in [e["text"] for e in alice.chat_entries()]
