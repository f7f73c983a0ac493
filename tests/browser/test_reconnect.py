"""The server restarts or dies: pages reconnect by themselves and meet again.

These servers sign tickets with a random secret of their own (none is
configured), so a successor cannot resume their calls: the pages keep the
call while they reconnect, are refused (``bad_ticket``), say so, and look
again. (With a shared secret the call goes on: test_restart_keeps_call.py.)
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

REFUSED = "This chat could not be taken back after the reconnect, so it has ended."
# Every line the chat log ever showed, kept even after the log is cleared.
SAID_JS = """() => {
  window.__said = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) window.__said.push(node.textContent);
    }
  }).observe(document.querySelector('[data-testid="chat-log"]'), { childList: true });
}"""


def test_pages_reconnect_after_restart_and_crash_and_rejoin(make_server, pair):
    server = make_server()
    alice, bob = pair(server)
    first_ids = {alice.session_id, bob.session_id}
    for person in (alice, bob):
        person.js(SAID_JS)

    # Graceful restart: SIGTERM makes the server send server_draining.
    for person in (alice, bob):
        person.js("() => { window.omiro.stateLog.length = 0; }")
    assert server.stop() == 0
    for person in (alice, bob):
        person.wait("() => window.omiro.link.resuming")
        assert person.state == "connected"  # the call is kept while the page reconnects
        assert (
            person.testid("status").inner_text() == "Reconnecting to the server… your call goes on"
        )
        # The server's delay (reconnect_after_ms, 1000 by default) plus jitter.
        first = person.js("() => window.omiro.reconnects[0]")
        assert first["reason"] == "draining", first
        assert first["delayMs"] >= 1000, first
        assert person.probe()["live"] == 1
    server = make_server(port=server.port)  # its successor, at the same address

    for person in (alice, bob):
        # (The line may be cleared at once by the next match: the log keeps what was said.)
        person.wait(f"() => window.__said.includes({REFUSED!r})", timeout_ms=20_000)
        person.wait_state("connected", timeout_ms=20_000)
    assert {alice.session_id, bob.session_id}.isdisjoint(first_ids)  # new sessions
    assert alice.partner_id == bob.session_id
    alice.wait_call_connected()
    bob.wait_call_connected()
    assert alice.js("() => window.omiro.stateLog") == ["waiting", "connected"]

    # Crash: the socket just drops; jittered backoff until a server answers.
    for person in (alice, bob):
        person.js("() => { window.omiro.reconnects.length = 0; }")
    server.crash()
    for person in (alice, bob):
        person.wait("() => window.omiro.link.resuming")
        assert person.js("() => window.omiro.reconnects[0].reason") == "lost"
    make_server(port=server.port)
    for person in (alice, bob):
        person.wait("() => !window.omiro.link.resuming", timeout_ms=30_000)
        person.wait_state("connected", timeout_ms=30_000)
    alice.wait_call_connected()
    alice.wait_media_flowing()
