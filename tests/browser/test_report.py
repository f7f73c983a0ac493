"""Reporting a stranger ends the chat for both and keeps the two apart."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_report_ends_chat_and_both_look_for_someone_else(server, people):
    alice = people(server, "alice")
    bob = people(server, "bob")
    for person in (alice, bob):
        person.start(text=True)
    for person in (alice, bob):
        person.wait_state("connected")
    bob.testid("chat-input").fill("buy my stuff at example.invalid")
    bob.testid("chat-input").press("Enter")
    alice.wait(
        "() => document.querySelector('[data-testid=chat-log]').textContent"
        ".includes('buy my stuff')"
    )

    alice.testid("report").click()
    dialog = alice.page.locator("#report-dialog")
    assert dialog.is_visible()
    dialog.get_by_label("Spam or advertising").check()
    alice.testid("report-confirm").click()

    alice.wait_state("waiting")
    bob.wait_state("waiting")
    assert "won't meet them again" in alice.testid("chat-log").inner_text()
    assert "The chat was ended." in bob.testid("chat-log").inner_text()
    # Both are queued, and (blocked from each other) not matched again.
    alice.wait_server_stats(online=2, waiting=2)
    assert alice.state == "waiting"
    assert bob.state == "waiting"
