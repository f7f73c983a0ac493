"""A partner closing the tab: the other side is told and looks for someone new."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_partner_closing_tab_shows_partner_left_and_requeues(make_server, people, pair):
    # An unreachable STUN server: candidates gathering lags, the loopback call
    # still connects, and the page must have used exactly what hello said.
    server = make_server(OMIRO_ICE_URLS='["stun:127.0.0.1:9"]')
    alice, bob = pair(server)
    hello = alice.js("() => window.omiro.signaling.hello.ice_servers")
    assert hello == [{"urls": ["stun:127.0.0.1:9"]}], hello
    used = alice.js("() => window.omiro.pc.getConfiguration().iceServers.map(s => s.urls)")
    assert used == [["stun:127.0.0.1:9"]], used
    policy = alice.js("() => window.omiro.pc.getConfiguration().iceTransportPolicy")
    assert policy == alice.js("() => window.omiro.signaling.hello.ice_transport_policy") == "all"

    bob.page.context.close()  # the tab (and its browser context) is gone

    alice.wait(
        "() => document.querySelector('[data-testid=status]').textContent"
        " === 'Stranger left. Looking for someone new…'"
    )
    alice.wait_state("waiting")
    assert "Stranger has disconnected." in alice.testid("chat-log").inner_text()
    assert alice.probe()["live"] == 0
    assert alice.js("() => document.querySelector('[data-testid=remote-video]').srcObject") is None
    assert alice.testid("chat-input").is_disabled()
    alice.wait_server_stats(online=1, waiting=1)

    # Looking again for real: the next person who arrives gets a working call.
    carol = people(server, "carol")
    carol.start()
    for person in (alice, carol):
        person.wait_state("connected")
    assert alice.partner_id == carol.session_id
    for person in (alice, carol):
        person.wait_call_connected()
    alice.wait_media_flowing()
