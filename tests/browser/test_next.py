"""Next: both sides go back to waiting, meet new people, and nothing leaks."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def waited_after_connected(person) -> bool:
    """The page went back to waiting after its last connected state."""
    log = person.js("() => window.omiro.stateLog")
    return "connected" in log and "waiting" in log[log.index("connected") :]


def test_next_returns_both_to_waiting_and_rematches_with_a_third(server, people, pair):
    alice, bob = pair(server)

    carol = people(server, "carol")
    carol.start()
    carol.wait_state("waiting")

    # Alice presses Esc (Next). Both she and Bob drop back to waiting; Carol,
    # who was waiting, gets one of them and their call connects.
    alice.js("() => { window.omiro.stateLog.length = 0; }")
    bob.js("() => { window.omiro.stateLog.length = 0; }")
    # (twice: the focus is in the message box, where one Esc only warns)
    alice.page.keyboard.press("Escape")
    alice.page.keyboard.press("Escape")
    carol.wait_state("connected")
    for person in (alice, bob):
        person.wait("() => window.omiro.stateLog.includes('waiting')")
    partner = alice if carol.partner_id == alice.session_id else bob
    other = bob if partner is alice else alice
    partner.wait(f"() => window.omiro.partnerId === {carol.session_id!r}")
    carol.wait_call_connected()
    partner.wait_call_connected()
    other.wait_state("waiting")
    assert other.probe()["live"] == 0
    carol.wait_media_flowing()

    # Carol presses Next: the one still waiting gets her, with a working call.
    carol.testid("next").click()
    other.wait_state("connected")
    assert other.partner_id == carol.session_id
    # Each page handles its own match_found: wait for Carol's too.
    carol.wait(f"() => window.omiro.partnerId === {other.session_id!r}")
    other.wait_call_connected()
    carol.wait_call_connected()
    other.wait_media_flowing()
    partner.wait_state("waiting")
    assert partner.testid("status").inner_text() == "Stranger left. Looking for someone new…"
    assert partner.probe()["live"] == 0


def test_ten_nexts_in_a_row_leave_no_peer_connection_behind(server, pair):
    alice, bob = pair(server)

    for round_ in range(10):
        old = alice.js("() => window.omiro.matchId")
        alice.testid("next").click()
        # With nobody else around, the two meet again at once.
        for person in (alice, bob):
            person.wait(
                "old => window.omiro.state === 'connected' && window.omiro.matchId"
                " && window.omiro.matchId !== old",
                old,
            )
        if round_ % 2:
            # Every other round let the call connect; the others are torn
            # down mid-negotiation, which is where leaks like to hide.
            alice.wait_call_connected()
            bob.wait_call_connected()

    alice.wait_call_connected()
    bob.wait_call_connected()
    bob.wait_media_flowing()
    for person in (alice, bob):
        probe = person.probe()
        assert probe["created"] >= 11, probe
        assert probe["live"] == 1, probe
        assert probe["created"] - probe["closed"] == 1, probe
        assert probe["appLive"] == 1, probe

    # Stop: no peer connection is left, and the camera and microphone are released.
    for person in (alice, bob):
        person.testid("stop").click()
        person.wait_state("idle")
    for person in (alice, bob):
        probe = person.probe()
        assert probe["live"] == 0, probe
        assert probe["created"] == probe["closed"], probe
        assert probe["appLive"] == 0, probe
        assert probe["liveTracks"] == 0, probe
    alice.wait_server_stats(online=2, waiting=0)
