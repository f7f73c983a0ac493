"""Text-only mode: matches only text users, and never touches camera or microphone."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_text_mode_matches_text_only_and_never_calls_getusermedia(server, people):
    carol = people(server, "carol")  # a video user, already waiting
    carol.start()
    carol.wait_state("waiting")

    alice = people(server, "alice")
    bob = people(server, "bob")
    alice.start(text=True, interests="Chess, jazz")
    alice.wait_state("waiting")
    bob.start(text=True, interests="jazz,cats")
    for person in (alice, bob):
        person.wait_state("connected")
        status = person.testid("status").inner_text()
        assert status == "You're talking with a stranger · you both like jazz", status
    assert alice.partner_id == bob.session_id
    assert bob.partner_id == alice.session_id
    assert carol.state == "waiting"  # a video user is never matched with a text user

    alice.testid("chat-input").fill("text only, no camera")
    alice.testid("chat-input").press("Enter")
    bob.wait(
        "() => document.querySelector('[data-testid=chat-log]').textContent"
        ".includes('text only, no camera')"
    )

    # The chips show what was asked for, normalised.
    chips = alice.js(
        "() => [...document.querySelectorAll('#interest-chips .chip span')].map(e => e.textContent)"
    )
    assert chips == ["chess", "jazz"]

    for person in (alice, bob):
        probe = person.probe()
        assert probe["gum"] == 0, probe
        assert probe["created"] == 0, probe
        assert person.js("() => window.omiro.gumCalled") is False
        assert (
            person.js("() => document.querySelector('[data-testid=local-video]').srcObject") is None
        )
        assert not person.testid("remote-video").is_visible()  # no stage in text mode
    assert carol.probe()["gum"] == 1

    alice.testid("stop").click()
    alice.wait_state("idle")
    bob.wait(
        "() => document.querySelector('[data-testid=status]').textContent"
        ".startsWith('Stranger left')"
    )
    assert alice.probe()["gum"] == 0
