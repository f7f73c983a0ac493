"""Relay-only calls through a real coturn: a call that connects, and a wrong secret."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

# Candidate types of the selected pair, from the page's own RTCPeerConnection.
SELECTED_PAIR = """async () => {
  const pc = window.omiro.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
  });
  if (!pair) return null;
  return {
    local: stats.get(pair.localCandidateId).candidateType,
    remote: stats.get(pair.remoteCandidateId).candidateType,
  };
}"""
OUTCOME = "() => window.omiro.call && window.omiro.call.outcome"


def test_turn_relay_only_call_connects_plays_and_is_counted(make_server, people, coturn, metrics):
    server = make_server(**coturn.omiro_env())
    alice = people(server, "alice")
    bob = people(server, "bob")
    alice.start()
    alice.wait_state("waiting")
    hello = alice.js("() => window.omiro.signaling.hello")
    assert hello["ice_transport_policy"] == "relay"
    assert [s["urls"] for s in hello["ice_servers"]] == [[coturn.url]]  # no STUN, no host path
    bob.start()
    for person in (alice, bob):
        person.wait_call_connected()
    for person in (alice, bob):
        person.wait_media_flowing()
        person.wait(f"async () => ({SELECTED_PAIR})() !== null")
        assert person.js(SELECTED_PAIR) == {"local": "relay", "remote": "relay"}
        person.wait(f"() => ({OUTCOME})() !== null")
        outcome = person.js(OUTCOME)
        assert outcome["outcome"] == "connected"
        assert outcome["path"] == "relay"
        assert 0 < outcome["connectMs"] < 15_000
    # Both pages reported their side; nothing counted as direct or failed.
    m = metrics(server.url)
    m.wait(m.CONNECTED_RELAY, 2)
    assert m.get(m.CONNECTED_DIRECT) == 0
    assert m.get(m.FAILED) == 0
    assert m.get('omiro_call_connect_seconds_count{path="relay"}') == 2
    # coturn really relayed: it allocated for both and saw the permissions.
    log = coturn.log.read_text(errors="replace")
    assert log.count("ALLOCATE processed, success") >= 2, log[-2000:]


def test_turn_wrong_secret_fails_visibly_and_is_counted(make_server, people, coturn, metrics):
    server = make_server(**coturn.omiro_env(secret="not-the-secret-coturn-has"))
    alice = people(server, "alice")
    bob = people(server, "bob")
    alice.start()
    alice.wait_state("waiting")
    bob.start()
    for person in (alice, bob):
        person.wait_state("connected")
    for person in (alice, bob):
        # coturn answers 401 at once; the page gives up on its own instead of
        # waiting for a "failed" state that never comes.
        person.wait(f"() => ({OUTCOME})() !== null", timeout_ms=10_000)
        outcome = person.js(OUTCOME)
        assert outcome == {
            "outcome": "failed",
            "connectMs": None,
            "path": None,
            "reason": "refused",
        }
        errors = person.js("() => window.omiro.call.candidateErrors.map(e => e.errorCode)")
        assert 401 in errors
        assert person.js("() => window.omiro.call.localCandidates") == 0
        assert person.js("() => window.omiro.pc.connectionState") != "connected"
        # Visible: the caption over the video, the stage state, and the chat log.
        caption = person.page.locator("#overlay-caption")
        caption.wait_for(state="visible", timeout=5_000)  # the overlay fades in
        assert "Couldn't reach the relay server" in caption.inner_text()
        assert person.js("() => document.body.dataset.call") == "failed"
        assert any("relay server" in e["text"] for e in person.chat_entries())
        # The chat still works: the match stands, only the video failed.
        assert person.state == "connected"
    m = metrics(server.url)
    m.wait(m.FAILED, 2)
    assert m.get(m.CONNECTED_RELAY) == 0
    assert m.get(m.CONNECTED_DIRECT) == 0
    assert "check_stun_auth" in coturn.log.read_text(errors="replace")  # refused by coturn


ADDRESS_TEXT = "() => document.querySelector('[data-testid=address-privacy]').textContent"


@pytest.mark.rule("protocol/hello-data")
def test_turn_relay_only_is_the_default_once_turn_is_configured(make_server, people, coturn):
    """``ice.relay_only`` left at "auto": with TURN, both ends of the selected pair are relays."""
    server = make_server(**coturn.omiro_env(relay_only=None))
    alice = people(server, "alice")
    bob = people(server, "bob")
    # Before any socket: the page, as rendered, already says so.
    assert alice.js("() => document.body.dataset.relayed") == "true"
    assert "hidden from strangers" in alice.js(ADDRESS_TEXT)
    alice.start()
    alice.wait_state("waiting")
    hello = alice.js("() => window.omiro.signaling.hello")
    assert hello["ice_transport_policy"] == "relay"
    assert [s["urls"] for s in hello["ice_servers"]] == [[coturn.url]]
    bob.start()
    for person in (alice, bob):
        person.wait_call_connected()
    for person in (alice, bob):
        person.wait_media_flowing()
        person.wait(f"async () => ({SELECTED_PAIR})() !== null")
        assert person.js(SELECTED_PAIR) == {"local": "relay", "remote": "relay"}
        assert "hidden from strangers" in person.js(ADDRESS_TEXT)
    assert coturn.log.read_text(errors="replace").count("ALLOCATE processed, success") >= 2


def test_turn_relay_only_false_allows_direct_calls(make_server, people, coturn):
    """Turned off by hand, TURN is only a fallback: on loopback the call goes direct."""
    server = make_server(**coturn.omiro_env(relay_only="false"))
    alice = people(server, "alice")
    bob = people(server, "bob")
    assert alice.js("() => document.body.dataset.relayed") == "false"
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_call_connected()
    alice.wait(f"async () => ({SELECTED_PAIR})() !== null")
    assert alice.js("() => window.omiro.signaling.hello.ice_transport_policy") == "all"
    assert alice.js(SELECTED_PAIR) == {"local": "host", "remote": "host"}
    assert "can see your IP address" in alice.js(ADDRESS_TEXT)


def test_without_turn_calls_are_direct_as_before(server, people):
    """The default ("auto") with no TURN server: direct calls, and the page says so."""
    alice = people(server, "alice")
    bob = people(server, "bob")
    assert alice.js("() => document.body.dataset.relayed") == "false"
    alice.start()
    bob.start()
    for person in (alice, bob):
        person.wait_call_connected()
    for person in (alice, bob):
        person.wait(f"async () => ({SELECTED_PAIR})() !== null")
        assert person.js("() => window.omiro.signaling.hello.ice_transport_policy") == "all"
        assert person.js(SELECTED_PAIR) == {"local": "host", "remote": "host"}
        assert "can see your IP address" in person.js(ADDRESS_TEXT)
