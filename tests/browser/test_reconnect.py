"""The server restarts or dies: pages reconnect by themselves and meet again."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_pages_reconnect_after_restart_and_crash_and_rejoin(make_server, pair):
    server = make_server()
    alice, bob = pair(server)
    first_ids = {alice.session_id, bob.session_id}

    # Graceful restart: SIGTERM makes the server send server_draining.
    for person in (alice, bob):
        person.js("() => { window.omiro.stateLog.length = 0; }")
    assert server.stop() == 0
    for person in (alice, bob):
        person.wait_state("reconnecting")
        assert person.testid("status").inner_text().endswith("Reconnecting…")
        # The server's delay (reconnect_after_ms, 1000 by default) plus jitter.
        first = person.js("() => window.omiro.reconnects[0]")
        assert first["reason"] == "draining", first
        assert first["delayMs"] >= 1000, first
        assert person.probe()["live"] == 0
    server = make_server(port=server.port)  # its successor, at the same address

    for person in (alice, bob):
        person.wait_state("connected", timeout_ms=20_000)
    assert {alice.session_id, bob.session_id}.isdisjoint(first_ids)  # new sessions
    assert alice.partner_id == bob.session_id
    alice.wait_call_connected()
    bob.wait_call_connected()
    assert alice.js("() => window.omiro.stateLog") == ["reconnecting", "waiting", "connected"]

    # Crash: the socket just drops; jittered backoff until a server answers.
    for person in (alice, bob):
        person.js("() => { window.omiro.reconnects.length = 0; }")
    server.crash()
    for person in (alice, bob):
        person.wait_state("reconnecting")
        assert person.js("() => window.omiro.reconnects[0].reason") == "lost"
    make_server(port=server.port)
    for person in (alice, bob):
        person.wait_state("connected", timeout_ms=30_000)
    alice.wait_call_connected()
    alice.wait_media_flowing()
